// Runs Pixelmed's DicomSRValidator (the validator of the IHE AI Results profile's Connectathon)
// on every file named, compiling its rules once, and prints each file's report after a line
// "== FILE". Run with the JDK's source launcher:
//   java -cp /usr/share/java/pixelmed.jar tests/java/ValidateSr.java FILE...
import com.pixelmed.validate.DicomSRValidator;

public class ValidateSr {
    public static void main(String[] args) throws Exception {
        DicomSRValidator validator = new DicomSRValidator();
        for (String file : args) {
            System.out.println("== " + file);
            System.out.println(validator.validate(file));
        }
    }
}
